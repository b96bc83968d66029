"""Recipes: linked fields share one value, and the demo recipe's named variants are exactly the
command-line overrides the shipped checkpoint was trained with."""
import pytest

from vasa_jax.config_utils import config_from_json, config_to_json, load_config


@pytest.mark.parametrize("spec,prefix", [("configs/motion.py:demo", ""),
                                         ("configs/demo.py:tiny", "motion.")])
def test_window_and_context_overrides_reach_data_and_model(spec, prefix):
  config = load_config(spec, [f"--config.{prefix}data.window=32",
                              f"--config.{prefix}data.context=3"])
  motion = config.motion if prefix else config
  assert (motion.data.window, motion.model.window) == (32, 32)
  assert (motion.data.context, motion.model.context) == (3, 3)
  # What export stores (and inference reads back) carries the same values.
  stored = config_from_json(config_to_json(motion))
  assert (stored.model.window, stored.model.context) == (32, 3)


_GPU = ["data.val_persons=[]", "model.app_size=32", "train.batch_size=32", "optim.lr=3e-4",
        "data.worker_count=12", "train.sample_every=0", "train.ckpt_every=500",
        "train.log_every=25"]
# The bundled stage 1 predates the face-network losses (on in latent.py:demo since).
_NO_FACE = ["loss.face_id=0", "loss.face_perceptual=0", "loss.face_landmark=0",
            "loss.foreground_mask=False"]
_GPU = _NO_FACE + _GPU
_DEV = ('data.val_persons=["bob_menendez","aoc","bill_skarsgard","cremad_1001",'
        '"german_news_anchor","latentsync_model1","lrs2_deepavsr_00016","lrs3_laalm_s4",'
        '"mead_W040","style_trump_clip1","vox_00473"]')


@pytest.mark.parametrize("variant,base,overrides", [
    ("latent_gpu_1", "latent.py:demo",
     _GPU + ["train.num_steps=100000", "loss.dyn_swap=0", "loss.mouth_l1=0"]),
    ("latent_gpu_2", "latent.py:demo", _GPU + ["train.num_steps=7403"]),
    ("latent_gpu_3", "latent.py:demo", _GPU + ["train.num_steps=11800"]),
    ("latent_cpu_1", "latent.py:demo",
     _NO_FACE + ["train.num_steps=1200", "loss.dyn_swap=0", "loss.mouth_l1=0"]),
    ("latent_cpu_2", "latent.py:demo", _NO_FACE + ["train.num_steps=2100", "loss.mouth_l1=0"]),
    ("latent_cpu_3", "latent.py:demo", _NO_FACE + ["train.num_steps=3000", "optim.lr=6e-4"]),
    # The bundled GPU model fine-tuned with the face losses on, its encoder frozen.
    ("latent_face_tune", "latent.py:demo",
     _GPU[len(_NO_FACE):] + ["train.num_steps=300", "optim.lr=1e-4", "optim.warmup_steps=30",
                             "optim.ema_decay=0.99", "train.ckpt_every=100",
                             "train.batch_size=8", "train.log_every=10", "data.worker_count=2",
                             "optim.freeze=gen/encoder"]),
    # The bundled stage 2 learnt the emotion control from file names only (issue 19).
    ("motion", "motion.py:demo", ["data.network_emotions=False"]),
    ("motion_dev", "motion.py:demo", [_DEV, "data.network_emotions=False"]),
    ("motion_cpu", "motion.py:demo", ["train.batch_size=16", "model.audio_lookahead=0",
                                      "data.network_emotions=False"]),
    ("motion_fer", "motion.py:demo", []),
    ("motion_fer_tune", "motion.py:demo",
     ["train.num_steps=300", "optim.lr=1e-4", "optim.warmup_steps=30", "optim.ema_decay=0.99",
      "train.ckpt_every=100"]),
])
def test_demo_recipe_variants_equal_the_shell_overrides_they_replace(variant, base, overrides):
  named = load_config(f"configs/demo_recipe.py:{variant}")
  by_hand = load_config(f"configs/{base}", [f"--config.{o}" for o in overrides])
  assert named.to_dict() == by_hand.to_dict()


def test_unknown_demo_recipe_names_the_choices():
  with pytest.raises(ValueError, match="latent_gpu_1"):
    load_config("configs/demo_recipe.py:latent_gpu_9")
