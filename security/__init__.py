"""openfang.security"""
