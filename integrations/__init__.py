"""Other people's methods, run unmodified in their own environments and read back into kalbench's contracts.

Each subpackage holds only our side of the bridge (a launcher, an environment adapter, a log converter); the
method's own code is fetched at environment build time, never vendored here.
"""
