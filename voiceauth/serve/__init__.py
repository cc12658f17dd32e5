"""``voiceauth serve``: the library as a service for contact-centre platforms.

A Starlette application on uvicorn sharing one :class:`~voiceauth.client.VoiceAuth` (and its
live-call worker pool) between REST clients, streaming calls (Twilio Media Streams,
Genesys AudioHook, Asterisk AudioSocket over TCP), the agent view and Prometheus. Needs the ``serve`` extra
(``pip install voiceauth[serve]``).

* :mod:`~voiceauth.serve.app`: routes, errors, health, metrics (``create_app``).
* :mod:`~voiceauth.serve.auth`: API keys with scopes, stored hashed in a JSON key file.
* :mod:`~voiceauth.serve.streams`, :mod:`~voiceauth.serve.twilio`, :mod:`~voiceauth.serve.audiohook`:
  one WebSocket = one live call; :mod:`~voiceauth.serve.audiosocket`: one TCP connection = one live call.
* :mod:`~voiceauth.serve.agent`: the agent view page and its server-sent events.
* :mod:`~voiceauth.serve.server`: uvicorn with a shutdown that lets calls in flight finish.
"""

from voiceauth.serve.app import create_app
from voiceauth.serve.auth import ApiKey, KeyFile, KeyRing, Scope
from voiceauth.serve.config import Limits

__all__ = ["ApiKey", "KeyFile", "KeyRing", "Limits", "Scope", "create_app"]
