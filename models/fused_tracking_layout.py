"""Where the fused tracking kernel finds things: the indices of its settings (``cfg``, ``fc``), of the column
offsets it reads (``col``, from the pool's layout: :func:`models.fused_tracking._columns`) and of its flags.
Plain Python numbers; numba freezes them into the compiled code."""

from __future__ import annotations

# cfg: int settings of the pool
(
    K_KIND,  # 0 linear, 1 delta, 2 level, 3 track
    K_IN,  # linear: inputs
    K_OUT,  # outputs (series: dim)
    K_P,  # features and the constant 1
    K_LAGS,
    K_DIM,
    K_NSCALE,
    K_STANDARDIZE,
    K_MIX,
    K_HUBER,
    K_EPS,  # the pool keeps TrackIn's eps buffer
    N_CFG,
) = range(12)
# fc: float settings and constants
(
    C_FORGET,
    C_TINY,  # the buffer dtype's smallest normal
    C_FMAX,  # the buffer dtype's largest finite value
    C_CLIP,
    C_FEATURE_CLIP,
    C_BOUND,
    C_COV_CAP,
    C_STAT_ALPHA,
    C_SCALE_WARMUP,
    C_MIX_RHO,
    C_MIX_ETA,
    C_MIX_BIAS,
    C_MIX_POWER,
    C_MIX_WARMUP,
    C_EWMA,
    C_PH_WINDOW,
    N_FC,
) = range(17)
# col: column offsets (float buffer unless noted; -1 where the pool has none)
(
    O_W,
    O_MOM,
    O_EPS,
    O_SQ,
    O_FIG,  # last loss, loss EWMA, grad norm, beta_t, ||eps||
    O_LR,
    O_GAMMA,
    O_BETA,
    O_ETA,
    O_EPS_DECAY,
    O_WD,
    O_MGN,
    O_RULE,  # int
    O_DEBIAS,  # bool
    O_HD,
    O_COV,
    O_SM2,
    O_SN,
    O_RESID2,
    O_NAIVE2,
    O_STATW,
    O_MIXM,
    O_MIXN,
    O_MIXCOUNT,
    O_LEARNED,
    O_SKILL,  # model loss EWMA, naive loss EWMA, mix weight
    O_MEAN,
    O_MEANW,
    O_LAST,
    O_TS,
    O_SEEN,
    O_RATE,
    O_RATES,
    O_NONFIN,  # int
    O_DMEAN,
    O_DTOT,
    O_DMIN,
    O_DDELTA,
    O_DTHR,
    O_DN,  # int
    O_DCOUNT,  # int
    O_DLAST,  # int
    O_DWARM,  # int
    O_DEN,  # bool
    O_DRESET,  # bool
    O_STEP,  # int
    N_COL,
) = range(47)
# flags: per-row outcomes, one row of ``flags [N_FLAGS, n]`` each
FL_WARMING, FL_DRIFT, FL_APPLIED, FL_NONFINITE, N_FLAGS = range(5)

TINY = 1e-30  # models.functional's guard against 0 / 0
LINEAR, DELTA, LEVEL, TRACK = range(4)
