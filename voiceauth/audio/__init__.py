"""Audio in: the only decoder (files, arrays, G.711 and PCM bytes), G.711, simulated channels."""

from voiceauth.audio.channel import TELEPHONE_BAND_HZ, TELEPHONE_RATE, add_noise, crop, telephone_channel
from voiceauth.audio.decode import (
    FILE_FORMATS,
    MAX_CHANNELS,
    MAX_DECODED_SAMPLES,
    MAX_RATE,
    MAX_RESAMPLE_FACTOR,
    MIN_RATE,
    MODEL_RATE,
    READ_BLOCK_FRAMES,
    SUPPORTED_RATES,
    Audio,
    Encoding,
    check_rate,
    decode_bytes,
    load_audio,
    resample,
)
from voiceauth.audio.g711 import alaw_decode, alaw_encode, mulaw_decode, mulaw_encode

__all__ = [
    "Audio",
    "Encoding",
    "FILE_FORMATS",
    "MAX_CHANNELS",
    "MAX_DECODED_SAMPLES",
    "MAX_RATE",
    "MAX_RESAMPLE_FACTOR",
    "MIN_RATE",
    "MODEL_RATE",
    "READ_BLOCK_FRAMES",
    "SUPPORTED_RATES",
    "TELEPHONE_BAND_HZ",
    "TELEPHONE_RATE",
    "add_noise",
    "alaw_decode",
    "alaw_encode",
    "check_rate",
    "crop",
    "decode_bytes",
    "load_audio",
    "mulaw_decode",
    "mulaw_encode",
    "resample",
    "telephone_channel",
]
