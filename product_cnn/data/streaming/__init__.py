"""Photos as litdata shards: prepared once (``prepare_data.py``), streamed to every rank when training
(``data=streaming``) and predicting."""
