"""Audio/video timing shared by the library and the recipes (`configs/common.py` re-exports it).

25 fps video, 16 kHz audio, a 10 ms mel hop: one frame spans 640 samples and 4 feature rows.
"""
FPS = 25
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
MEL_HOP = 160
MEL_WIN = 400
MEL_NFFT = 512
N_MELS = 80
ROWS_PER_FRAME = SAMPLES_PER_FRAME // MEL_HOP  # 4

# VASA-1's classifier-free guidance scales (audio, gaze): the defaults of the sampler, the stream
# and `configs/motion.py` (a pipeline stores its own in pipeline.json).
CFG_AUDIO = 0.5
CFG_GAZE = 1.0
