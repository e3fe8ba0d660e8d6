"""fitc.export"""
