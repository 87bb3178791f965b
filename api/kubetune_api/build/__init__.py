"""Build tool: the CRD (`crd`), the API reference (`docs`) and their command line (`__main__`)."""
