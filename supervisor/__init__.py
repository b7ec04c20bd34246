"""openfang.supervisor"""
