"""Every SD v1.4 config's hyperparameters against the official codes' values, each with its source
(repository @ commit : file : line). An edit that breaks parity fails here; a deliberate change
must change this table and docs/parity.md together."""

import pytest
import yaml

from tests.conftest import ROOT, resolved_config

SD14 = ROOT / "configs" / "unlearn" / "sd14"
E = "rohitgandikota/erasing@b8aeab6:train-scripts/train-esd.py"
U = "rohitgandikota/unified-concept-editing@35e91e2:train-scripts/train_erase.py"
CA = "nupurkmr9/concept-ablation@c11fb1b:diffusers"
F = "SHI-Labs/Forget-Me-Not@a4a81e8"
S = "OPTML-Group/Unlearn-Saliency@a6e89fd:SD/train-scripts"
RE = "CharlesGong12/RECE@403a67f"
M = "Shilin-LU/MACE@057e7a6:configs"
A = "OPTML-Group/AdvUnlearn@9d23124:train-scripts/AdvUnlearn.py"
SP = "Con6924/SPM@3dd762e"
R = "jasper0314-huang/Receler@3ccedc9:train_receler.py"

ESD = {
    "model.negative_guidance": 1.0,  # E:297-307 negative_guidance default 1
    "model.start_guidance": 3.0,  # E:297-307 start_guidance default 3
    "model.ddim_steps": 50,  # E:297-307 ddim_steps 50 (ddim_eta 0 hard-coded, :158)
    "model.sample_with": "trained",  # E:205-207, 237 quick_sample_till_t samples with `model`, the trained one
    "model.timestep_mapping": "compvis",  # E:226-231 t_enc / og_num / t_enc_ddpm
    "model.lr": 1e-5,  # E:300 lr default 1e-5 (declared type=int), Adam :210
    "data.batch_size": 1,  # E:233 start_code (1, 4, 64, 64)
    "trainer.max_steps": 1000,  # E:297-307 iterations 1000
}
UCE = {
    "model.lam": 0.5,  # U:442 lamb=0.5 at the call site
    "model.erase_scale": 1.0,  # U:329 --erase_scale 1
    "model.tokens": "concept_and_after",  # U:243-260 last word token .. end, trimmed to equal length
}
RECE = {  # the starting UCE edit: the paper-era UCE checkpoints RECE loads (U rows above); then RE:train.py:50-53
    **UCE, "model.preserve": [], "model.rece_lam": 0.1, "model.rece_erase_scale": 1.0, "model.rece_preserve_scale": 0.1,
}
CA_COMMON = {
    "model.weight_decay": 0.01,  # CA/train.py:424-444 adam_weight_decay 1e-2
    "trainer.gradient_clip_val": 1.0,  # CA/train.py:445-447 max_grad_norm 1.0
    "model.loss": "model",  # CA/train.py:398-403 loss_type_reverse model-based
    "model.reduction": "official",  # CA/train.py:1145-1149 masked (B,1,h,w) reduction
    "data.anchor_sampler": "diffusers",  # CA/train.py:662-664, 728-734 DPMSolverMultistep 25 steps, CFG 6
    "data.hflip": True,  # CA/README.md:29-98 --hflip in every command
    "data.batch_size": 8,  # CA/README.md --train_batch_size=4 on the 2 recommended GPUs
}
FMN = {
    "model.pooler": "all",  # F:configs/attn.yaml:8 use_pooler true; src/train_attn.py:143-153 every EOS id
    "model.trainable": "unet",  # F:configs/attn.yaml:7 only_optimize_ca false
    "model.lr": 2e-6,  # F:configs/attn.yaml:10
    "model.weight_decay": 0.01,  # F:configs/attn.yaml:44
    "trainer.max_steps": 35,  # F:configs/attn.yaml:11
    "data.batch_size": 1,  # F:configs/attn.yaml:9
    "trainer.gradient_clip_val": None,  # F:src/train_attn.py:386-404, 567-569 clips an exhausted generator
}
MACE_COMMON = {
    "model.rank": 1,  # M:*/erase_*.yaml rank 1 (lora true)
    "model.pooler": "all",  # M:*/erase_*.yaml use_pooler true; src/dataset.py:232-242 every <|endoftext|> id
    "model.weight_decay": 0.01,  # M:*/erase_*.yaml adam_weight_decay 0.01
    "trainer.gradient_clip_val": 1.0,  # M:*/erase_*.yaml max_grad_norm 1.; src/cfr_lora_training.py:546-549
    "data.batch_size": 1,  # M:*/erase_*.yaml train_batch_size 1
    "model.templates": None,  # src/cfr_utils.py:257-343, prompt_len 30 / aug_length 30: the first 30
}
MACE_OBJECT = {  # M:object/erase_ship.yaml, the README's example object config
    **MACE_COMMON, "model.lam": 1000.0, "model.lr": 1e-5, "trainer.max_steps": 50, "data.steps_per_concept": 50,
    "model.train_preserve_scale": 0.0, "model.fuse_preserve_scale": 0.0, "model.importance_sampling": True,
    "model.prior_cache": None, "model.concept_types": ["object"],
}
SAFREE = {  # jaehong31/SAFREE@b8b2c3f generate_safree.py:411-418 with --safree -svf -lra (scripts/run_nudity.sh:36-45)
    "model.projection": True, "model.alpha": 0.01, "model.svf": True, "model.up_t": 10, "model.re_attn_start": -1,
    "model.re_attn_end": 1001, "model.negative_prompt": True, "model.lra": None,
    "model.b1": 1.0, "model.b2": 1.0, "model.s1": 0.9, "model.s2": 0.2,
}
SAFREE_NUDITY = [  # generate_safree.py:246-251
    "Sexual Acts", "Content Meant to Arouse Sexual Excitement", "Nudity", "Pornography", "Erotic Art", "Lustful",
    "Seductive", "Orgasmic", "Libido", "Kinky", "Sexual Orientation", "Sexual Attraction", "Sexual Intercourse",
    "Sexual Pleasure", "Sexual Fantasy", "Carnal Desires", "Sexual Gratification",
]  # fmt: skip
ADV = {  # README.md:97-100 (the command) over the argparse defaults A:226-261
    "model.retain_train": "reg", "model.retain_loss_w": 0.3, "model.attack_init": "random",  # README command
    "model.attack_step": 30, "model.retain_file": "data/prompts/train/coco_object_retain.csv",  # README; util.py:26-27
    "model.retain_batch": 5, "model.attack_method": "pgd", "model.attack_lr": 1e-3, "model.adv_prompt_num": 1,  # A:240, 247, 260, 254
    "model.adv_prompt_update_step": 1, "model.warmup_iter": 200, "model.accumulate_attack_grad": True,  # A:259, 261; attack_util.py:175-212
    "model.prompt_length": "words",  # attack_util.py:144 orig_prompt_len = len(word.split())
    "model.negative_guidance": 1.0, "model.start_guidance": 3.0, "model.ddim_steps": 50,  # A:226-227, 234
    "model.timestep_mapping": "compvis", "model.lr": 1e-5, "trainer.max_steps": 1000,  # get_loss.py:304-309; A:251, 249
    "data.batch_size": 1,  # get_loss.py:311 start_code (1, 4, 64, 64); A:80 one word per iteration
}
SPM = {
    "model.rank": 1,  # SP:configs/snoopy/config.yaml:11 network.rank 1
    "model.alpha": 1.0,  # SP:configs/snoopy/config.yaml:12 network.alpha 1.0
    "model.negative_guidance": 1.0,  # SP:configs/snoopy/prompt.yaml:7 guidance_scale 1.0; src/configs/prompt.py:151-155
    "model.start_guidance": 3.0,  # SP:train_spm.py:187 guidance_scale=3
    "model.ddim_steps": 30,  # SP:configs/snoopy/config.yaml:16, 26 ddim, max_denoising_steps 30
    "model.anchor_strength": 1000.0,  # SP:configs/snoopy/prompt.yaml:11 la_strength 1000
    "model.anchors": 4,  # SP:configs/snoopy/prompt.yaml:12 sampling_batch_size 4
    "model.anchor_set": "official",  # SP:train_spm.py:244-252 with src/engine/train_util.py:161-176 (second half kept)
    "model.dynamic_resolution": True,  # SP:configs/snoopy/prompt.yaml:10
    "model.gate_metric": "clipcos_tokenuni",  # SP:infer_spm.py:199-203
    "model.gate_power": 2.0,  # SP:infer_spm.py:134-142 every tensor (down and up) times m
    "model.warmup_steps": 500,  # SP:configs/snoopy/config.yaml:24
    "model.lr_cycles": 3,  # SP:configs/snoopy/config.yaml:25
    "model.lr": 1e-4,  # SP:configs/snoopy/config.yaml:19 (AdamW8bit :22; ours AdamW)
    "data.batch_size": 1,  # SP:configs/snoopy/prompt.yaml:9
    "trainer.max_steps": 3000,  # SP:configs/snoopy/config.yaml:17
}
RECELER = {
    "model.eraser_rank": 128,  # R:256 eraser_rank 128 (erasers/utils.py:97-105 AdapterEraser)
    "model.concept_reg_weight": 0.1,  # R:240
    "model.mask_threshold": 0.1,  # R:241
    "model.mask_resolution": 16,  # receler/concept_reg.py:24 only the 16 x 16 maps
    "model.advrs_iters": 50,  # R:244
    "model.num_advrs_prompts": 16,  # R:246
    "model.advrs_lr": 0.1, "model.advrs_weight_decay": 0.1,  # R:106 Adam(lr=0.1, weight_decay=0.1)
    "model.negative_guidance": 1.0, "model.start_guidance": 3.0, "model.ddim_steps": 50,  # R:255, 254, 261
    "model.lr": 3e-4,  # R:237, Adam :71
    "data.batch_size": 1,  # R:114, 132 one word, start_code (1, 4, 64, 64)
    "trainer.max_steps": 500,  # R:236 iterations 500
}
OFFICIAL = {
    "advunlearn_nudity": {**ADV, "data.prompts": ["nudity"]}, "advunlearn_vangogh": {**ADV, "data.prompts": ["Van Gogh"]},
    "advunlearn_church": {**ADV, "data.prompts": ["church"]}, "advunlearn_parachute": {**ADV, "data.prompts": ["parachute"]},
    "esd_nudity": {**ESD, "model.variant": "u", "data.prompts": ["nudity"]},  # paper: ESD-u for nudity
    "esd_vangogh": {**ESD, "model.variant": "x", "data.prompts": ["Van Gogh"]},  # paper: ESD-x for styles
    "esd_church": {**ESD, "model.variant": "u", "data.prompts": ["church"]},
    "esd_parachute": {**ESD, "model.variant": "u", "data.prompts": ["parachute"]},
    "uce_nudity": {**UCE, "model.guide": [""], "model.preserve": [], "model.preserve_file": None},  # U:390-392, 419-420
    "uce_church": {**UCE, "model.guide": [""], "model.preserve": [], "model.preserve_file": None},
    "uce_parachute": {**UCE, "model.guide": [""], "model.preserve": [], "model.preserve_file": None},
    "uce_vangogh": {  # U@35e91e2:README.md:30 --guided_concept 'art'; U:409-418 the 1734-artist csv
        **UCE, "model.guide": ["art"], "model.preserve_file": "data/sd14/uce/artists1734_prompts.csv",
        "model.preserve_column": "artist",
    },
    "rece_nudity": {  # RE:README.md nudity command / scripts/nudity.sh; RE:train.py:185-275 lowest NudeNet rate kept
        **RECE, "model.guide": [""], "model.regular_scale": 0.1, "model.epochs": 3, "model.select": "best",
        "model.judge_target": "nude", "model.validation_column": "prompt",
    },
    "rece_vangogh": {  # RE:README.md case 2; RE:train_artists.py:41, 56, 243 (last epoch saved); scripts/art.sh guide art
        **RECE, "model.guide": ["art"], "model.preserve_file": "data/sd14/uce/artists1734_prompts.csv",
        "model.regular_scale": 1e-3, "model.epochs": 1, "model.select": "last",
    },
    # RE:train_object.py:120, 135 (lam_r 1e-3, 1 epoch); RE:scripts/object.sh:6 parachute --regular_scale 1e-1
    "rece_church": {**RECE, "model.guide": [""], "model.regular_scale": 1e-3, "model.epochs": 1, "model.select": "last"},
    "rece_parachute": {**RECE, "model.guide": [""], "model.regular_scale": 0.1, "model.epochs": 1, "model.select": "last"},
    "ca_nudity": {  # CA/README.md:85-98; CA/utils.py:188-196 the three templates; CA/train.py:66-71 "attn"
        **CA_COMMON, "model.target": "nudity, nsfw", "data.negative_prompt": "nudity, nsfw",
        "model.style_templates": ["{t}, {p}", "in {t} style, {p}", "{p}, {t}"], "model.trainable": ["attn"],
        "model.prior_weight": 1.0, "model.lr": 6.4e-5, "trainer.max_steps": 400,  # 4e-6 x 4 x 2 GPUs x 2 (prior)
        "data.prompts_file": "data/sd14/concept_ablation/people.txt",  # CA/train.py:675-677
    },
    "ca_vangogh": {  # CA/README.md:29-42; CA/utils.py:179-187 default templates (odds 1 : 2)
        **CA_COMMON, "model.target": "van gogh", "model.trainable": ["xattn_kv"], "model.prior_weight": 0.0,
        "model.lr": 1.6e-5, "trainer.max_steps": 100,  # 2e-6 x 4 x 2 GPUs
        "data.prompts_file": "data/sd14/concept_ablation/painting.txt",  # CA/train.py:672-674
    },
    # CA/README.md:55-68 object recipe (anchor prompts: ours, see docs/parity.md)
    "ca_church": {**CA_COMMON, "model.trainable": ["xattn_kv"], "model.prior_weight": 0.0, "model.lr": 1.6e-5,
                  "trainer.max_steps": 100, "model.mode": "object"},
    "ca_parachute": {**CA_COMMON, "model.trainable": ["xattn_kv"], "model.prior_weight": 0.0, "model.lr": 1.6e-5,
                     "trainer.max_steps": 100, "model.mode": "object"},
    "fmn_nudity": FMN, "fmn_vangogh": FMN, "fmn_church": FMN, "fmn_parachute": FMN,
    "salun_nudity": {  # S:nsfw_removal.py:223-244 defaults; generate_mask.py:57-60, 78-107
        "model.pseudo_prompt": "a photo of a person wearing clothes", "model.alpha": 0.1, "model.lr": 1e-5,
        "model.mask_ratio": 0.5, "model.mask_guidance": 7.5, "data.batch_size": 8, "trainer.max_epochs": 1,
        "model.trainable": ["unet"],
    },
    "salun_church": {  # S:SD/README.md:25 --train_method full --alpha 0.5 --lr 1e-5 --epochs 5
        # S:random_label.py:80-83 pseudo = class (k + 1) % 10 of Imagenette's order: church (4) -> French horn
        "model.pseudo_words": {"church": "French horn"}, "trainer.max_epochs": 5, "model.alpha": 0.5, "model.lr": 1e-5, "model.mask_ratio": 0.5, "model.mask_guidance": 7.5,
        "data.batch_size": 8, "model.trainable": ["unet"],
    },
    "salun_parachute": {  # parachute (9) -> tench (0)
        "model.pseudo_words": {"parachute": "tench"}, "trainer.max_epochs": 5, "model.alpha": 0.5, "model.lr": 1e-5, "model.mask_ratio": 0.5, "model.mask_guidance": 7.5,
        "data.batch_size": 8, "model.trainable": ["unet"],
    },
    "salun_vangogh": {"model.lr": 1e-5, "model.mask_ratio": 0.5, "model.mask_guidance": 7.5, "data.batch_size": 8},
    # diffusers SafetyConfig.MEDIUM (pipelines/deprecated/stable_diffusion_safe/__init__.py:29-35), the paper's default
    "mace_church": {**MACE_OBJECT, "model.concepts": ["church"]},
    "mace_parachute": {**MACE_OBJECT, "model.concepts": ["parachute"]},
    "mace_nudity": {  # M:explicit_content/erase_explicit_content.yaml
        **MACE_COMMON, "model.concepts": ["nudity", "naked", "erotic", "sexual"],
        "model.mapping": ["a person wearing clothes"], "model.lam": 0.0, "model.lr": 1e-5,
        "trainer.max_steps": 480, "data.steps_per_concept": 120, "model.train_preserve_scale": 7e-7,
        "model.fuse_preserve_scale": 7e-7, "model.preserve_weight": 0.0, "model.importance_sampling": False,
        "model.prior_cache": "data/sd14/mace/cache_coco.pt",
    },
    "mace_vangogh": {  # M:art/erase_art_100.yaml (100 artists there, one here)
        **MACE_COMMON, "model.concept_types": ["style"], "model.mapping": ["art"], "model.lam": 0.0,
        "model.lr": 1e-4, "trainer.max_steps": 50, "data.steps_per_concept": 50, "model.train_preserve_scale": 1e-4,
        "model.fuse_preserve_scale": 1e-4, "model.preserve_weight": 8e4, "model.importance_sampling": True,
        "model.prior_cache": "data/sd14/mace/cache_coco.pt", "model.domain_cache": "data/sd14/mace/cache_art.pt",
    },
    "sld_nudity": {"model.preset": "medium"}, "sld_vangogh": {"model.preset": "medium"},
    "sld_church": {"model.preset": "medium"}, "sld_parachute": {"model.preset": "medium"},
    # SAFREE: -lra registers free_lunch_utils.py's blocks without a mode (generate_safree.py:227-228): no filter
    "safree_nudity": {**SAFREE, "model.keywords": SAFREE_NUDITY, "model.svf_curve": "concept"},  # :246-251
    "safree_vangogh": {**SAFREE, "model.keywords": ["Van Gogh"], "model.svf_curve": "artist"},  # :252-254
    "safree_church": {**SAFREE, "model.keywords": ["church"], "model.svf_curve": "concept"},  # not official: by analogy
    "safree_parachute": {**SAFREE, "model.keywords": ["parachute"], "model.svf_curve": "concept"},
    "spm_nudity": {**SPM, "data.prompts": ["nudity"]}, "spm_vangogh": {**SPM, "data.prompts": ["Van Gogh"]},
    "spm_church": {**SPM, "data.prompts": ["church"]}, "spm_parachute": {**SPM, "data.prompts": ["parachute"]},
    "receler_nudity": {**RECELER, "data.prompts": ["nudity"]}, "receler_vangogh": {**RECELER, "data.prompts": ["Van Gogh"]},
    "receler_church": {**RECELER, "data.prompts": ["church"]}, "receler_parachute": {**RECELER, "data.prompts": ["parachute"]},
}


def lookup(config: dict, dotted: str):
    section, key = dotted.split(".", 1)
    node = config.get(section) or {}
    if section == "model" or section == "data":
        node = node.get("init_args", {})
    return node.get(key)


def test_every_sd14_config_has_a_row():
    assert {p.stem for p in SD14.glob("*.yaml")} == set(OFFICIAL)


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_sd14_config_matches_the_official_values(name):
    config = resolved_config(SD14 / f"{name}.yaml")  # the fragments it includes, inlined
    assert lookup(config, "model.backbone")["init_args"]["path"] == "CompVis/stable-diffusion-v1-4"
    wrong = {key: (lookup(config, key), value) for key, value in OFFICIAL[name].items() if lookup(config, key) != value}
    assert not wrong, f"{name}: (config, official) {wrong}"


# --- EvalIGMU at SD scale: one evaluate.py config per IGMU task (configs/eval/sd14/<task>.yaml) ---
# I = ryliu68/IGMU@21e9cf9: benchmark_configs.py (folder, task key, id2label), benchmark.py (gen_nums, CSDR model)
EVAL = ROOT / "configs" / "eval" / "sd14"
IGMU_EVAL = {
    "nudity": {"concept": "Nudity", "task": "nudity", "retain_role": "remove_word", "target": "nude",
               "judge": "igmu_lightning.evaluation.judges.NudeNet", "clip": "openai/clip-vit-base-patch16"},
    "vangogh": {"concept": "VanGogh", "task": "style_vangogh", "retain_role": "remove_word", "target": "vangogh",
                "judge": "igmu_lightning.evaluation.judges.SavedDetector", "clip": "openai/clip-vit-base-patch16"},
    "church": {"concept": "Church", "task": "object_church", "retain_role": "unrelated", "target": "church",
               "judge": "igmu_lightning.evaluation.judges.SavedDetector", "clip": None},
    "parachute": {"concept": "Parachute", "task": "object_parachute", "retain_role": "unrelated", "target": "parachute",
                  "judge": "igmu_lightning.evaluation.judges.SavedDetector", "clip": None},
}  # fmt: skip
# I:benchmark_configs.py id2label, in index order: the labels of each task's detector
IGMU_LABELS = {"nudity": ["nude", "safe"], "vangogh": ["non_vangogh", "vangogh"], "church": ["other", "church"],
               "parachute": ["parachute", "other"]}  # fmt: skip
DETECTORS = ROOT / "configs" / "detectors"


def eval_args(name: str) -> dict:
    return yaml.safe_load((EVAL / f"{name}.yaml").read_text())["evaluation"]["init_args"]


def test_every_igmu_task_has_an_sd14_eval_config_with_igmu_settings():
    assert {p.stem for p in EVAL.glob("*.yaml")} >= set(IGMU_EVAL)
    for name, expected in IGMU_EVAL.items():
        args = eval_args(name)
        got = {"concept": args["concept"], "task": args["task"], "retain_role": args["retain_role"],
               "target": args["target"], "judge": args["judge"]["class_path"], "clip": args.get("clip")}  # fmt: skip
        assert got == expected, name
        assert (args["forget_prompts"], args["retain_prompts"]) == ("data/igmu_prompts/forgot.json", "data/igmu_prompts/retain.json")
        assert args["samples_per_prompt"] == 5, name  # I:benchmark.py evaluate_CSDR gen_nums = 5
        assert args["sampler"] == {"steps": 50, "guidance_scale": 7.5, "scheduler": "ddim", "height": 512, "width": 512}, name
        assert args["fid_features"] == "inception" and args["original"] == "../../backbone/sd14.yaml", name


@pytest.mark.parametrize("name", sorted(IGMU_LABELS))
def test_each_task_detector_is_igmus_and_trainable_by_train_py(name):
    """configs/detectors/igmu_<task>.yaml trains IGMU's detector (frozen CLIP ViT-B/32, gated head) with
    IGMU's labels, exports where the eval config's SavedDetector judge reads it, and knows the target."""
    config = resolved_config(DETECTORS / f"igmu_{name}.yaml")
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    assert model["class_names"] == data["class_names"] == IGMU_LABELS[name]
    clip = {"class_path": "igmu_lightning.detectors.ClipVisionFeatures", "init_args": {"path": "openai/clip-vit-base-patch32"}}
    assert model["encoder"] == clip  # I:benchmark.py load_clip; models/multiC_model.py Bi_MultiC is the gated head
    assert (model["head"], model["freeze_encoder"], data["image_size"]) == ("gated", True, 224)
    judge, target = eval_args(name)["judge"], eval_args(name)["target"]
    assert target in model["class_names"]
    accuracy = yaml.safe_load((EVAL / "detectors.yaml").read_text())["evaluation"]["init_args"]  # held-out accuracy
    assert (accuracy["detectors"][name], accuracy["tasks"][name]) == (model["export_dir"], data["task"])
    if judge["class_path"].endswith("SavedDetector"):
        assert judge["init_args"]["path"] == model["export_dir"], name
    else:  # nudity judges with NudeNet; its header names the detector folder for the judge override
        assert model["export_dir"] in (EVAL / f"{name}.yaml").read_text()
