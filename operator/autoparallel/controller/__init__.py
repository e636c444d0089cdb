"""The ParallelDeployment operator: CRD models, GPU inventory, planning, renderers, handlers, status, metrics.

Only the ``k8s*`` modules talk to the Kubernetes API; everything else is pure.
"""
