"""Worker processes on this host: where they go, starting them, watching them, healing them.

Used by the router (``fastvlm serve``, its own workers) and by the node agent (``fastvlm node``);
it never imports the router or torch.
"""
