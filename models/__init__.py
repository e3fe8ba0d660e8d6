"""fitc.models"""
