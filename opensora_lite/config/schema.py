"""The one config schema. Hydra YAML under configs/ is merged onto these dataclasses, so an unknown
key or a wrong type fails at composition with the key's full name. Cross-field rules live in
validate.py. Every default here is visible in `--cfg job`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class FlowConfig:
    """The rectified-flow objective and its timestep distribution (the `flow` config node)."""

    sigma_min: float = 1e-5
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: bool = True
    base_tokens: int = 256  # tokens per latent frame at which the shift is base_shift
    base_shift: float = 1.0
    max_tokens: int = 4096  # tokens per latent frame at which the shift is max_shift
    max_shift: float = 3.0
    temporal_shift: bool = True  # multiply the shift by sqrt(latent frames)


@dataclass
class AudioDataConfig:
    """The clips' sound (docs/audio-video.md): `osl-data` stores each video's track beside it, the loader
    gives every batch the audio of its video windows. Rate and layout: LTX-2's front end wants 16 kHz stereo."""

    enabled: bool = False  # ingest: decode and store the track; loader: batches carry audio
    sample_rate: int = 16000  # Hz: every track is resampled to this
    layout: str = "stereo"  # mono | stereo (a mono track is copied to both channels; stereo to mono: their mean)
    # loader: samples of the track read on each side of a window (batch["audio_context"]) so that the front
    # end's centred STFT sees the real sound around the window, not the window's reflection (which put a
    # broadband burst in every window's edge frames); n_fft // 2 is all it uses (LTX-2's: 512). 0: none
    context: int = 512


@dataclass
class ShapesConfig:
    """Generator settings (the `source` node of `osl-data` for kind=shapes)."""

    num_clips: int = 1200
    # colour names drawn from (COLOURS, and NEW_COLOURS such as orange); the default is COLOURS in order
    colours: list[str] = field(default_factory=lambda: ["red", "green", "blue", "yellow", "magenta", "cyan"])
    clips_per_shard: int = 150
    seed: int = 0
    sizes: list[list[int]] = field(default_factory=lambda: [[64, 64], [48, 64], [64, 48]])  # (h, w) choices
    fps: list[float] = field(default_factory=lambda: [8.0, 16.0, 24.0])
    min_seconds: float = 1.2
    max_seconds: float = 2.5
    speeds: dict[str, float] = field(default_factory=lambda: {"slow": 0.35, "fast": 1.0})  # frame extents / s
    size_range: list[float] = field(default_factory=lambda: [0.3, 0.4])  # shape diameter / min(h, w)
    # what a clip's caption says, from its labels (colour, shape, direction, speed); shapes=motion leaves the
    # speed out, so that only the motion score measured at ingest tells it (experiment=tiny_motion_score)
    caption: str = "a {speed} {colour} {shape} moving {direction}"
    max_background: int = 30  # background grey level is drawn from [0, max_background]
    crf: int = 18
    # share of clips whose shape bounces off the wall it moves towards (reversing at the contact frame);
    # 0 draws exactly the clips it always drew
    bounce: float = 0.0
    # a soundtrack in each mp4 (stereo AAC, both channels alike, and the same as a <key>.wav member): a tone
    # whose pitch names the colour, a click at the bounce's contact frame; the video is the same either way
    sound: bool = False
    sound_rate: int = 16000  # Hz
    files: bool = False  # also write each clip as <out>/clips/<key>.mp4 with its caption (.txt) and labels (.json)


@dataclass
class RunConfig:
    name: str = "tiny_cpu"  # run directory = <root>/<name>; re-running the same name resumes
    root: str = "runs"
    stage: Optional[str] = None  # osl-train: which curriculum stage to run
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "fp32"  # compute dtype: fp32 | bf16 (bf16 is 20-35x slower on CPUs without AVX512-BF16)
    # GPUs: fp32 matrix products and convolutions on TF32 tensor cores (an fp32 run's MFU is then taken against
    # the TF32 peak); false: IEEE fp32 (MFU against the fp32 peak). CPUs ignore it
    tf32: bool = True
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    peak_tflops: Optional[float] = None  # per-device peak for MFU; null: the datasheet figure of known GPUs


@dataclass
class DCAEConfig:
    """Open-Sora 2.0's Video DC-AE (autoencoder.kind=dc_ae). The defaults are dc-ae-f32t4c128."""

    widths: List[int] = field(default_factory=lambda: [128, 256, 512, 512, 1024, 1024])  # per stage
    encoder_depths: List[int] = field(default_factory=lambda: [2, 2, 2, 3, 3, 3])
    decoder_depths: List[int] = field(default_factory=lambda: [3, 3, 3, 3, 3, 3])
    blocks: List[str] = field(default_factory=lambda: ["res", "res", "res", "evit", "evit", "evit"])  # res | evit
    temporal: List[bool] = field(default_factory=lambda: [False, False, False, True, True, False])  # resampling
    # after stage i also halves (encoder) / doubles (decoder) time
    head_dim: int = 32  # linear-attention head width
    tile_size: int = 256  # tiling: pixels per spatial tile side
    tile_frames: int = 32  # tiling: frames per temporal tile
    tile_overlap: float = 0.25  # tiling: fraction of a tile shared with its neighbour, blended linearly


@dataclass
class MelConfig:
    """A log-mel front end (autoencoders/mel.py): waveform -> log(max(mel magnitude, log_floor)), [B, C, T, mels].
    The defaults are LTX-2's audio VAE input: 16 kHz, n_fft 1024, hop 160 (100 frames a second), 64 bins
    on the Slaney mel scale with Slaney area normalisation, magnitude (power 1), Hann window, centred."""

    sample_rate: int = 16000
    n_fft: int = 1024
    win_length: Optional[int] = None  # null: n_fft
    hop_length: int = 160
    n_mels: int = 64
    f_min: float = 0.0
    f_max: Optional[float] = None  # null: sample_rate / 2
    power: float = 1.0  # 1: magnitude, 2: power
    mel_scale: str = "slaney"  # slaney | htk
    norm: Optional[str] = "slaney"  # slaney (each filter's area normalised) | null
    log_floor: float = 1e-5
    griffin_lim_iters: int = 32  # the CPU inverse for listening (fast Griffin-Lim, momentum 0.99)


@dataclass
class MelAEConfig:
    """Our small log-mel autoencoder (audio_autoencoder.kind=mel_ae, autoencoders/mel_ae.py): 2D convolutions
    over (time, mel), each stage after the first halving both; 2 ** (len(widths) - 1) must equal
    audio_autoencoder.time_factor and mel_factor."""

    widths: List[int] = field(default_factory=lambda: [16, 32, 32])  # channels per stage
    depth: int = 1  # residual blocks per stage (encoder and decoder)
    # the log-mel enters the network as (logmel - input_shift) / input_scale, and leaves it undone; the
    # defaults are the mean and std of Shapes with sound's log-mel (mostly silence, log 1e-5 = -11.5)
    input_shift: float = -9.5
    input_scale: float = 3.0


@dataclass
class VocoderConfig:
    """Log-mel -> waveform, for listening (autoencoders/audio.py)."""

    kind: str = "griffin_lim"  # griffin_lim (torch, CPU, the front end's inverse) | ltx2 (diffusers' LTX2Vocoder)
    path: Optional[str] = None  # ltx2: local diffusers folder (config.json + weights)
    dtype: str = "fp32"


@dataclass
class AudioAutoencoderConfig:
    """The audio stream's autoencoder (docs/audio-video.md): its log-mel front end, the autoencoder that
    maps a log-mel [B, channels, frames, mels] to latents [B, latent_channels, frames / time_factor,
    mels / mel_factor], and a vocoder for listening."""

    kind: str = "mel_ae"  # mel_ae (ours, trainable) | ltx2_audio (diffusers' AutoencoderKLLTX2Audio, frozen)
    # ltx2_audio: local diffusers folder (config.json + weights); mel_ae: a .safetensors of its weights (an
    # autoencoder stage's final model.safetensors); null: random weights (seeded by the run)
    path: Optional[str] = None
    channels: int = 2  # audio channels in (data.audio.layout's: stereo 2, mono 1)
    latent_channels: int = 8
    time_factor: int = 4  # log-mel frames per latent frame (25 latent frames a second at 100 mel frames a second)
    mel_factor: int = 4  # mel bins per latent bin
    # the latents the model sees: (z - shift_factor) * scaling_factor; ltx2_audio first normalises each
    # (channel, latent bin) feature by its mean/std (from its weights, or stats_path)
    scaling_factor: float = 1.0
    shift_factor: float = 0.0
    stats_path: Optional[str] = None  # ltx2_audio: a .safetensors with latents_mean, latents_std (replaces its own)
    dtype: str = "fp32"
    mel: MelConfig = field(default_factory=MelConfig)
    mel_ae: MelAEConfig = field(default_factory=MelAEConfig)  # architecture of kind mel_ae
    vocoder: VocoderConfig = field(default_factory=VocoderConfig)


@dataclass
class AutoencoderConfig:
    kind: str = "pixel"  # pixel | hunyuan | hunyuan15 | wan | ltx | dc_ae
    path: Optional[str] = None  # local diffusers folder: config.json + weights (hunyuan, wan)
    latent_channels: int = 12
    spatial_factor: int = 2
    temporal_factor: int = 1
    causal: bool = False
    scaling_factor: float = 1.0
    shift_factor: float = 0.0
    tiling: bool = False  # diffusers spatial tiling: frames larger than a tile are encoded/decoded in tiles
    dtype: str = "fp32"
    offload_decoder: bool = True  # the VAE decoder stays on the CPU and visits the device only inside decode()
    # the diffusion model's (t, h, w) patch over these latents when a stage switches to this autoencoder
    # (stage.autoencoder; DC-AE: [1, 1, 1]); null keeps model.patch_size. The run's own patch is model.patch_size
    patch_size: Optional[List[int]] = None
    dc_ae: DCAEConfig = field(default_factory=DCAEConfig)  # architecture and tiles of kind dc_ae


@dataclass
class TextModelConfig:
    path: Optional[str] = None  # local transformers folder; null builds `tiny` from config
    tiny: Optional[Dict[str, Any]] = None  # transformers config kwargs for a random tiny model
    tokenizer: str = "bytes"  # tiny models only: "bytes" (ByT5) or "words" (hashed whole words)
    max_length: int = 512
    dim: int = 4096  # hidden size of the output (T5: per token; CLIP: pooled)
    dtype: str = "bf16"
    # T5 only: attend to the caption's tokens alone and zero the padding positions (Wan's recipe); false:
    # padding tokens are encoded like any other (Flux, Open-Sora 2.0)
    mask_padding: bool = False


@dataclass
class TextEncoderConfig:
    t5: TextModelConfig = field(default_factory=TextModelConfig)
    clip: TextModelConfig = field(default_factory=lambda: TextModelConfig(max_length=77, dim=768))
    init_seed: int = 1234  # seed of tiny random encoders (identical in every process and stage)
    cache_size: int = 0  # captions whose embeddings are memoised per process (0: none). Frozen
    # encoders are deterministic, so repeated captions need not be re-encoded; keep it small for T5-XXL.


@dataclass
class DataConfig:
    shards: str = "data/shapes"  # folder of .tar, glob, brace pattern (a-{000..009}.tar), or URL
    num_workers: int = 1
    prefetch_factor: int = 2
    shuffle_buffer: int = 256
    target_fps: float = 24.0  # temporal stride = ceil(fps / target_fps)
    aspect_ratios: List[float] = field(default_factory=lambda: [0.5625, 0.75, 1.0, 1.3333, 1.7778])  # h / w
    decode_threads: int = 1
    caption_key: str = "txt"
    # The caption the model sees, from the stored caption and the sample's json metadata (fields:
    # data/captions.py CAPTION_FIELDS). Presets: caption=plain | opensora2 (configs/caption/; Open-Sora
    # 2.0's: "{caption} {clip_fps:g} FPS, {vmaf_motion_int} motion score.")
    caption_template: str = "{caption}"
    image_caption_template: Optional[str] = None  # images' template; None: caption_template
    # a shard that cannot be opened is retried (1 s, 2 s, ... apart), then skipped (a local one for the whole run)
    open_retries: int = 2
    # video: decode and encode on the fly. cached: train from precomputed latents + text embeddings, built
    # once per stage under cache_dir (in a folder named by everything they depend on) by the run itself
    # or by `osl-data kind=cache` (docs/data.md#latent-cache)
    kind: str = "video"
    cache_dir: str = "data/cache"
    audio: AudioDataConfig = field(default_factory=AudioDataConfig)  # batches carry the windows' audio


@dataclass
class OptimConfig:
    lr: float = 5e-5
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-15
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "constant"  # constant | cosine
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of lr
    grad_clip: float = 1.0  # 0 disables


@dataclass
class AudioVideoLossConfig:
    """How a stage of kind audio_video weighs its two losses (diffusion/av.py, docs/audio-video.md)."""

    weights: Dict[str, float] = field(default_factory=lambda: {"video": 1.0, "audio": 1.0})
    # none: the weighted sum (LTX-2's plain sum at weights 1, 1); running_mean: each loss divided by its
    # running mean first, so neither modality drowns the other whatever their scales
    balance: str = "running_mean"
    balance_decay: float = 0.99  # of the running means (per micro-batch)


@dataclass
class DistillConfig:
    """A stage of kind distill (docs/distillation.md): the loop's model is the few-step student, initialised
    from the teacher (the stage's init weights); DMD2's fake-score critic trains beside it."""

    method: str = "dmd2"  # distribution matching with a fake-score critic (DMD2); the place for a second method
    teacher: Optional[str] = None  # the frozen teacher's weights; null: the stage's init (the student's start)
    steps: int = 4  # the student's sampling steps (its schedule: the flow's, shifted like training), no CFG
    # the teacher's guidance when it scores (the real score): null keeps the run's sample.cfg_scale /
    # sample.image_cfg_scale, so the student learns the guided model's outputs in one forward a step
    cfg_scale: Optional[float] = None
    image_cfg_scale: Optional[float] = None
    critic_steps: int = 2  # critic (fake score) updates per student update (DMD2's ratio: 5)
    critic_lr: Optional[float] = None  # null: the stage's optim.lr
    # the student's input at its k-th step comes from running it from noise for k steps (DMD2's backward
    # simulation; as it samples), not from noising real latents
    backward_simulation: bool = True
    # the distribution-matching loss's flow times are drawn uniformly in [t_min, t_max]
    t_min: float = 0.02
    t_max: float = 0.98
    gan_weight: float = 0.0  # DMD2's GAN term on the critic's features: not built yet (must stay 0)


@dataclass
class LoraConfig:
    """LoRA on the MMDiT's linears (docs/lora.md): rank 0 trains the full model."""

    rank: int = 0  # 0: full training; > 0: only the adapters (and cond_in, if train_cond_in) train
    alpha: float = 16.0  # the adapters' output is scaled by alpha / rank
    dropout: float = 0.0  # on the adapters' input
    # groups: attention (q/k/v + output projections; single blocks' linear1/linear2), mlp, modulation;
    # or regular expressions matched against whole BFL module names (e.g. "double_blocks[.]0[.]img_attn[.]qkv")
    targets: List[str] = field(default_factory=lambda: ["attention", "mlp"])
    train_cond_in: bool = True  # an I2V stage trains cond_in fully (true) or keeps it frozen (false)
    # the frozen base weights: auto (bf16 on a GPU with run.dtype=bf16 under single/ddp, else fp32) | fp32 | bf16
    base_dtype: str = "auto"


@dataclass
class ReconstructionConfig:
    """What an autoencoder stage (stage.kind=autoencoder, docs/autoencoder_training.md) trains on."""

    l1_weight: float = 1.0
    perceptual_weight: float = 0.0  # VGG/LPIPS perceptual loss; > 0 needs vgg_path
    vgg_path: Optional[str] = None  # local .safetensors of VGG16 `features.*` (+ LPIPS `lin*`) weights
    disc_weight: float = 0.0  # 3D PatchGAN (hinge); 0: no discriminator
    disc_start: int = 0  # the optimizer step from which the discriminator trains and its loss counts
    disc_lr: float = 1e-4
    disc_channels: int = 32
    disc_layers: int = 2
    image_fraction: float = 0.2  # share of steps trained on single frames (Open-Sora: 20% images)
    # which autoencoder the stage trains: video (`autoencoder`, on batch video) | audio (`audio_autoencoder`,
    # on the log-mel of the batches' sound: data.audio.enabled; L1 only so far)
    modality: str = "video"


@dataclass
class StageConfig:
    """One stage of a curriculum: the training loop's settings for a span of steps."""

    description: str = ""
    # diffusion (train the MMDiT) | autoencoder (train the autoencoder) | audio_video (the MMDiT with sound) |
    # distill (a few-step student of the stage's init weights)
    kind: str = "diffusion"
    steps: int = 1000
    init: str = "previous"  # previous | none | path to a .safetensors (BFL Flux or ours) or a stage dir
    # {resolution: {num_frames: [probability, batch_size]}} (Open-Sora 2.0's bucket_config); the
    # entries are checked in validate.py (OmegaConf cannot type a list nested in an int-keyed dict)
    # (dict defaults would merge into, not be replaced by, what a stage YAML gives: so none here)
    buckets: Dict[str, Dict[int, List[Any]]] = field(default_factory=dict)
    # weights of t2v, i2v_head/_tail/_loop, v2v_head/_tail; kind=audio_video: of t2av, v2a, a2v, i2av
    tasks: Dict[str, float] = field(default_factory=dict)
    # latent frames the v2v tasks give (Open-Sora 2.0: 33 video frames = 9 latent frames of a 4x causal VAE);
    # clips with no more latent frames than this train the other tasks
    v2v_frames: int = 9
    text_dropout: Dict[str, float] = field(default_factory=lambda: {"t5": 0.31622777, "clip": 0.31622777})
    optim: OptimConfig = field(default_factory=OptimConfig)
    grad_accum: int = 1
    ema_decay: float = 0.0  # 0 disables EMA
    log_every: int = 10
    checkpoint_every: int = 0  # steps between mid-stage checkpoints; 0: only the final one
    keep_checkpoints: int = 2
    # write mid-stage checkpoints in the background (DCP async save: single, ddp, fsdp2); training blocks
    # only while the state is copied to host memory. Other engines write synchronously (said at start-up)
    async_checkpoint: bool = False
    evaluate: bool = True  # sample (and score, if eval.kind is set) at the end of the stage
    # validation during training: every this many steps, sample the fixed prompts / seeds / I2V references of
    # the end-of-stage evaluation (EMA weights when EMA is on) and log its metrics; 0 disables
    validate_every: int = 0
    lora: LoraConfig = field(default_factory=LoraConfig)
    audio_video: AudioVideoLossConfig = field(default_factory=AudioVideoLossConfig)  # kind=audio_video
    reconstruction: ReconstructionConfig = field(default_factory=ReconstructionConfig)  # kind=autoencoder
    distill: DistillConfig = field(default_factory=DistillConfig)  # kind=distill
    # this stage's autoencoder (docs/encoders.md#switching-autoencoders-in-a-curriculum): a configs/autoencoder/
    # name (dc_ae, wan22, ...), a mapping of autoencoder keys merged onto the run's, or "stage:<name>" (the one an
    # earlier autoencoder stage trained: its final weights, latents scaled by its measured mean/std); null: the
    # run's. A stage whose autoencoder or patch differs from its parent's re-initialises img_in, final_layer, cond_in
    autoencoder: Optional[Any] = None
    patch_size: Optional[List[int]] = None  # the model's patch here; null: the stage autoencoder's, else the model's


@dataclass
class CurriculumConfig:
    name: str = "custom"
    stages: Dict[str, StageConfig] = field(default_factory=dict)  # run in this order


@dataclass
class ParallelConfig:
    engine: str = "single"  # single | ddp | fsdp2 | colossalai_zero2 | colossalai_hybrid_sp | deepspeed_zero2 | _zero3
    backend: str = "auto"  # process-group backend: auto (nccl on GPU, gloo on CPU) | nccl | gloo
    timeout_s: int = 600  # collective timeout: a dead rank makes the others fail within this
    compile: bool = False
    # activation checkpointing: how many blocks of each of the model's block groups are recomputed in
    # backward, e.g. {double_blocks: 8, single_blocks: 38} (flux) or {blocks: 30} (wan); more than a
    # group holds means all of it. The groups are the model spec's (models/<family>/__init__.py)
    ac_blocks: Dict[str, int] = field(default_factory=dict)
    sp_size: int = 1  # sequence parallelism: ranks per group sharing one batch, video tokens split among them
    hsdp_replicas: int = 1  # fsdp2: >1 shards within groups of world/replicas ranks, replicates across them
    # fsdp2 (several ranks): build the model on the meta device, shard it, then each rank fills only its
    # shards (memory-mapped slices of the initial weights, or its part of a DCP checkpoint);
    # deepspeed_zero3: build it partitioned (zero.Init), then fill it one gathered parameter at a time
    meta_init: bool = False
    # fsdp2 with one process: shard anyway, over a mesh of one rank (DTensor parameters, DCP checkpoints), so
    # the sharded code paths run on one GPU (the GPU suite's check); off: one rank trains the plain model
    shard_one_rank: bool = False
    param_dtype: str = "auto"  # compute dtype of the weights: auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32
    # backend settings merged last: DeepSpeed config keys (deepspeed_*), Booster plugin arguments (colossalai_*)
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class SampleConfig:
    num_steps: int = 50
    cfg_scale: float = 7.5  # text guidance scale
    # three-way guidance (diffusion/guidance.py): the image scale of conditioned tasks (Open-Sora 2.0: 3.0);
    # null: text guidance only, with the condition in both branches
    image_cfg_scale: Optional[float] = None
    text_oscillation: bool = False  # guidance oscillation: after oscillation_warmup steps, odd steps unguided
    image_oscillation: bool = False
    oscillation_warmup: int = 10
    image_ramp: bool = False  # i2v: image scale falls over the steps and rises along latent time
    # with sound (model.audio): the audio's text guidance scale, apart from the video's cfg_scale; null: cfg_scale
    audio_cfg_scale: Optional[float] = None
    motion_score: Optional[float] = None  # caption template field at sampling (data.caption_template)
    fps: Optional[float] = None  # the caption template's fps at sampling and the mp4 rate; null: data.target_fps
    resolution: Optional[str] = None  # default: the stage's largest resolution bucket
    num_frames: Optional[int] = None  # default: the stage's most frequent video frame count
    aspect_ratio: float = 1.0
    prompts: List[str] = field(default_factory=lambda: ["a red circle moving right"])
    batch_size: int = 8
    seed: int = 0
    save_videos: int = 8  # mp4s written per stage (the rest are scored only)


@dataclass
class EvalConfig:
    kind: Optional[str] = None  # shapes | null: what scores the end-of-stage samples
    repeats: int = 2  # each probe prompt is sampled this many times
    i2v_clips: int = 24
    v2a_clips: int = 12  # a stage of kind audio_video: rendered bounces given to video -> audio (each colour twice)
    # colours the probe prompts (and I2V references) cover, read against a palette of just these;
    # null: the six of the Shapes data. A LoRA stage teaching orange lists it (experiment=tiny_lora)
    colours: Optional[List[str]] = None
    # held-out shards: validation (stage.validate_every) also reports the flow loss on them, at fixed
    # timesteps with fixed noise (val/loss_t<t>, val/loss), text-to-video; null: none
    val_shards: Optional[str] = None
    val_batches: int = 2  # batches read from val_shards per validation (the same ones each time)
    val_timesteps: List[float] = field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])


@dataclass
class WandbConfig:
    enabled: bool = False
    project: str = "opensora_lite"
    entity: Optional[str] = None
    mode: str = "online"  # online | offline | disabled
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)


@dataclass
class LoggerConfig:
    console: bool = True
    progress_bar: bool = True
    jsonl: bool = True
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    # the model family's config (model.family: flux | wan; models/<family>/): typed by config/load.py
    model: Any = field(default_factory=lambda: {"family": "flux"})
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    audio_autoencoder: AudioAutoencoderConfig = field(default_factory=AudioAutoencoderConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


@dataclass
class SampleKind:
    """One kind of clip in a data distribution for `osl-plan` (plan.samples): its size, length and share."""

    num_frames: int = 129  # frames in the source clip (1: an image)
    height: int = 720
    width: int = 1280
    fps: float = 24.0
    weight: float = 1.0  # relative share of the dataset


@dataclass
class StagePlanConfig:
    """Per-stage settings of `osl-plan` (plan.stages.<stage>); null keeps the plan-wide value."""

    gpus: Optional[int] = None
    steps: Optional[int] = None  # default: the stage's own steps
    mfu: Optional[float] = None
    engine: Optional[str] = None
    sp_size: Optional[int] = None
    ac_blocks: Optional[Dict[str, int]] = None  # parallel.ac_blocks for this stage
    autoencoder: Optional[str] = None  # a configs/autoencoder/<name> used by this stage only
    patch_size: Optional[List[int]] = None  # the model's patch for this stage (e.g. [1, 1, 1] with dc_ae)
    samples: Optional[List[SampleKind]] = None  # this stage's data distribution (plan.mix=given)
    reference_gpu_days: Optional[float] = None  # a published figure: the planner prints the MFU it implies
    reference_clips: Optional[float] = None


@dataclass
class PlanConfig:
    """`osl-plan`: the cluster, the efficiency and the data a curriculum will meet (docs/plan.md)."""

    gpu: str = "H100"  # H100 | H200 | A100 | B200 | custom (then peak_tflops and memory_gib)
    peak_tflops: Optional[float] = None  # overrides the GPU's datasheet peak (dense, run.dtype)
    memory_gib: Optional[float] = None  # overrides the GPU's memory
    gpus: int = 8  # GPUs per stage (plan.stages.<stage>.gpus overrides)
    price_per_gpu_hour: float = 2.0  # dollars
    mfu: float = 0.35  # assumed model-FLOPs utilisation
    metrics: Optional[str] = None  # a run's metrics.jsonl (or run dir): use the MFU it measured instead
    mix: str = "uniform"  # uniform | given (plan.samples) | shards (metadata of data.shards)
    samples: List[SampleKind] = field(default_factory=list)  # the given distribution
    shard_records: int = 2000  # mix=shards: metadata records read at most
    dataset_clips: Optional[float] = None  # dataset size, for epochs (mix=shards: counted if null)
    text_encoders: str = "auto"  # resident | parked | cached | auto (cached with data.kind=cached, else resident)
    headroom: float = 0.04  # fraction of GPU memory left to the caching allocator (fragmentation; the
    # activation coefficients were measured as resident memory, which already holds some of it)
    reserved_gib: float = 2.0  # CUDA context, NCCL and cuBLAS buffers per GPU
    format: str = "table"  # table | markdown | json
    chart: Optional[str] = None  # write a PNG chart here
    label: Optional[str] = None  # this plan's name in comparisons
    compare: List[str] = field(default_factory=list)  # override sets planned beside this one (--compare)
    # {stage: StagePlanConfig fields}; untyped here so that `+plan.stages.<stage>.<key>=...` can add a
    # stage from the command line (OmegaConf cannot create a structured value there); checked in plan/stages.py
    stages: Dict[str, Any] = field(default_factory=dict)


@dataclass
class PlanJobConfig(Config):
    """`osl-plan`: a whole training config plus the plan's settings."""

    plan: PlanConfig = field(default_factory=PlanConfig)


@dataclass
class VideoSourceConfig:
    """`osl-data kind=videos`: shards from your own videos (data/ingest.py)."""

    source: Optional[str] = None  # a folder (caption sidecars .txt/.json) or a .csv/.tsv/.parquet index
    path_column: str = "path"
    caption_column: str = "text"
    root: Optional[str] = None  # relative index paths resolve against this (default: the index's folder)
    samples_per_shard: int = 256
    workers: int = 0  # probing processes; 0: one per CPU
    prefix: str = "data"  # shard names: <prefix>-000000.tar
    audio: AudioDataConfig = field(default_factory=AudioDataConfig)  # enabled: store each video's track (<key>.wav)


@dataclass
class BuildDataConfig:
    """`osl-data`: build WebDataset shards."""

    kind: str = "shapes"  # shapes (synthetic) | videos (your own, see `videos`)
    out: str = "data/shapes"
    overwrite: bool = False
    shapes: ShapesConfig = field(default_factory=ShapesConfig)
    videos: VideoSourceConfig = field(default_factory=VideoSourceConfig)


@dataclass
class ExportJobConfig:
    """`osl-export`: write a checkpoint as FLUX.1 weights (BFL single file and/or diffusers folder), or in
    Open-Sora 2.0's layout (`opensora`: <out>/<name>_opensora.safetensors, cond_in kept)."""

    checkpoint: str = "???"  # stage dir, checkpoint folder, model .safetensors or a sharded DCP folder
    out: str = "???"  # folder to write into: <out>/<name>.safetensors (BFL), <out>/transformer/ (diffusers)
    formats: List[str] = field(default_factory=lambda: ["bfl", "diffusers"])  # and/or opensora, lora (adapters)
    name: str = "flux_video"
    dtype: str = "bf16"  # bf16 | fp16 | fp32
    ema: bool = False  # export the EMA weights
    axes_dim: Optional[List[int]] = None  # RoPE split; default: model.axes_dim of the run that wrote the checkpoint


@dataclass
class SampleJobConfig:
    """`osl-sample`: generate videos from a checkpoint of a run."""

    checkpoint: str = "???"  # a stage dir (runs/<name>/<stage>) or a model .safetensors inside one
    out: Optional[str] = None  # default: a new <checkpoint stage dir>/samples_cli/<NNN> per call
    prompts: List[str] = field(default_factory=lambda: ["a fast red circle moving right"])
    prompt_file: Optional[str] = None  # one prompt a line (.txt), or .jsonl/.csv rows with prompt and reference
    task: Optional[str] = None  # t2v | i2v_head | i2v_tail | i2v_loop | v2v_head | v2v_tail (default: i2v_head
    # with a reference, else t2v); a model with sound: t2av | v2a (default: v2a with `video`, else t2av)
    reference: Optional[str] = None  # image or video: i2v_head its first frame, i2v_tail its last, v2v its frames
    reference_end: Optional[str] = None  # i2v_loop: the last frame's image or video (default: `reference`)
    image: Optional[str] = None  # shorthand for reference=<image> with task i2v_head
    v2v_frames: Optional[int] = None  # latent frames v2v is given (default: the stage's v2v_frames)
    num_samples: int = 1  # samples per prompt, seeds seed, seed+1, ...
    batch_size: Optional[int] = None
    # guidance and caption settings below: null keeps the run's `sample.*` value (see SampleConfig); a
    # distilled student's run samples on the student's schedule (distill.steps, no guidance)
    num_steps: Optional[int] = None
    cfg_scale: Optional[float] = None
    image_cfg_scale: Optional[float] = None  # three-way guidance (Open-Sora 2.0: 3.0 with cfg_scale 7.5)
    text_oscillation: Optional[bool] = None
    image_oscillation: Optional[bool] = None
    oscillation_warmup: Optional[int] = None
    image_ramp: Optional[bool] = None
    audio_cfg_scale: Optional[float] = None  # with sound: the audio's text guidance scale (null: the run's)
    video: Optional[str] = None  # v2a (a model with sound): the video (mp4) whose sound is generated
    motion_score: Optional[float] = None  # fills the run's caption template (Open-Sora 2.0: 4)
    fps: Optional[float] = None  # the caption template's fps and the mp4 rate (default: data.target_fps)
    resolution: Optional[str] = None
    num_frames: Optional[int] = None
    aspect_ratio: float = 1.0
    seed: int = 0
    ema: bool = False  # sample with the checkpoint's EMA weights
    device: str = "auto"
    # under torchrun: ranks in groups of parallel.sp_size split each video's tokens (sequence parallel);
    # the groups share the samples out. Only sp_size, backend and timeout_s matter here.
    parallel: ParallelConfig = field(default_factory=lambda: ParallelConfig(engine="ddp"))


# --- osl-curate (docs/curation.md): each stage's thresholds; a bound left null is not applied ---


@dataclass
class SplitStageConfig:
    """Scene cuts (PySceneDetect's ContentDetector) and windows of at most `max_window_s`."""

    threshold: float = 27.0  # ContentDetector's cut threshold (HSV + edge change, 0-255); lower cuts more
    min_scene_s: float = 0.5  # a cut closer than this to the previous one is ignored
    max_window_s: float = 10.0  # longer scenes are cut into equal windows no longer than this
    detect_height: int = 96  # frames are scaled to this height for detection


@dataclass
class BoundsStageConfig:
    """Duration, size, frame rate and aspect (width / height) bounds of a clip."""

    min_duration: Optional[float] = 2.0
    max_duration: Optional[float] = None
    min_height: Optional[int] = None
    min_width: Optional[int] = None
    min_fps: Optional[float] = None
    max_fps: Optional[float] = None
    min_aspect: Optional[float] = None
    max_aspect: Optional[float] = None


@dataclass
class MotionStageConfig:
    """Motion: `flow` (OpenCV Farneback optical flow, pixels per second at `thumb_height`),
    `motion_score` (mean luma difference, ingest's) or `vmaf_motion` (FFmpeg's vmafmotion, ingest's)."""

    measure: str = "flow"  # flow | motion_score | vmaf_motion: the one the bounds apply to
    min: Optional[float] = 2.0
    max: Optional[float] = None
    gap_s: float = 0.25  # flow between frames this far apart
    pairs: int = 8
    thumb_height: int = 64


@dataclass
class BlurStageConfig:
    """Sharpness: variance of the Laplacian of grey frames at `height` (median over the sampled frames)."""

    min: Optional[float] = 50.0
    height: int = 128


@dataclass
class OcrStageConfig:
    """Text: the fraction of the frame covered by text boxes (rapidocr's detector, bundled weights), the
    largest over the sampled frames."""

    max_area: Optional[float] = 0.02
    height: int = 320  # frames are scaled to at most this height for detection (never enlarged)
    min_score: float = 0.5  # recognition confidence a box needs to count as text


@dataclass
class AestheticStageConfig:
    """LAION-style aesthetic score: CLIP image embeddings (a local CLIP folder) through an MLP head (a local
    safetensors file), mean over the sampled frames. Refused at start without both paths."""

    clip: Optional[str] = None  # a folder CLIPVisionModelWithProjection.from_pretrained reads
    head: Optional[str] = None  # safetensors of the MLP: layers.N.weight / layers.N.bias, Linear layers in order
    min: Optional[float] = 4.5


@dataclass
class DedupStageConfig:
    """Near-duplicates: a 64-bit DCT perceptual hash of each sampled frame; a clip whose every frame is
    within `max_distance` bits of an earlier kept clip's is dropped (the first in source order is kept)."""

    max_distance: int = 6


@dataclass
class CurateJobConfig:
    """`osl-curate`: score clips, keep those within every stage's bounds, write training shards + an index."""

    source: str = "???"  # a folder of videos, a .txt list of paths, a .csv/.tsv/.parquet index, or shards (*.tar)
    out: str = "???"  # <out>/shards (training shards), <out>/index.jsonl, <out>/report/, <out>/parts/ (work units)
    stages: List[str] = field(default_factory=lambda: ["split", "bounds", "motion", "blur", "ocr", "dedup"])
    frames: int = 3  # frames sampled per clip for blur, OCR, aesthetic and dedup
    unit_size: int = 8  # source files per work unit (the unit of resumption and of sharing between ranks)
    rank: Optional[int] = None  # this process's rank; default from Slurm arrays or torchrun, else 0
    world: Optional[int] = None
    step: str = "all"  # all: my units, then the merge if every unit is done | units | merge
    workers: int = 1  # processes per rank over a unit's files
    score_dropped: bool = True  # score a dropped clip at every later stage too (full histograms; slower)
    samples_per_shard: int = 256
    prefix: str = "data"
    path_column: str = "path"
    caption_column: str = "text"
    examples: int = 6  # dropped clips per reason on the report's contact sheet
    split: SplitStageConfig = field(default_factory=SplitStageConfig)
    bounds: BoundsStageConfig = field(default_factory=BoundsStageConfig)
    motion: MotionStageConfig = field(default_factory=MotionStageConfig)
    blur: BlurStageConfig = field(default_factory=BlurStageConfig)
    ocr: OcrStageConfig = field(default_factory=OcrStageConfig)
    aesthetic: AestheticStageConfig = field(default_factory=AestheticStageConfig)
    dedup: DedupStageConfig = field(default_factory=DedupStageConfig)
