"""``python -m worker backfill``: page FunnelFox's past sessions into the queue, resumably."""
