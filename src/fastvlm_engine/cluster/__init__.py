"""Several hosts: the worker registry on Redis, cluster request signing and host tags.

``tags`` (parsing and matching host tags), ``addresses`` (worker URLs, loopback or not),
``secret`` (per-purpose HMAC keys from FASTVLM_CLUSTER_SECRET), ``replay`` (the bounded nonce
memory), ``signing`` (ClusterSigner, ClusterVerifier and the workers' ClusterGuard),
``registration`` (one advertised worker), ``envelope`` (signed values in Redis), ``registry``
(the Registry itself) and ``url`` (FASTVLM_REGISTRY_URL). Import the module you need: importing
this package loads neither redis nor the web stack, so config.py can validate settings with it.
"""
