"""openfang.workers"""
