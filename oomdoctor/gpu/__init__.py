"""The GPU side that needs no running session: a model of PyTorch's CUDA caching allocator
(`allocator_model`), memory_viz snapshots (`memviz`), the device view through NVML (`nvml`) and
the reading of OOM messages (`explain`)."""
