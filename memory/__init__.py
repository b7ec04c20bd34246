"""openfang.memory"""
