"""callpath.analysis"""
