"""callpath.probes"""
