"""The instance network, as an AosEdge device builds it: a named netns per instance on its
provider's CNI bridge, DNS per network, bandwidth and traffic quotas, and a firewall.

`model` is pure (names, CNI chain, files, nftables rules); `cni` runs CNI plugins; `manager`
sets up, tears down, adopts and sweeps.
"""
