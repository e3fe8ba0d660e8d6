"""fitc.backends"""
