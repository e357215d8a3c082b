"""elements.worker"""
