"""``kvl serve``: the engine and the disk caches behind OpenAI's chat-completions protocol.

One process loads the model once; HTTP requests are parsed (``protocol``), their images read
within the CLI's limits (``media``: URLs by ``fetch`` and ``download`` under one deadline and the
URL policy, ``file://`` paths by ``files`` without following a link), queued on a bounded queue
and run by one engine thread that batches them across sequences (``service``); answers go back
whole or as server-sent events with the thinking in ``reasoning_content`` (``replies``). ``app``
is the Starlette application (auth, body cap, errors in OpenAI's shape), ``accesslog`` its request
log, ``server`` starts it under uvicorn and records it in kvl's runtime folder (``record``), where
the CLI finds it (``client``).

Only ``server`` and ``app`` import Starlette and uvicorn (``pip install 'kvl[serve]'``); the CLI's
side (``record``, ``client``) needs nothing beyond the standard library.
"""
