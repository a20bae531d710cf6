#!/usr/bin/env bash
# The "KalMamba learns" leads study (issue 10; README "KalMamba learns: what each change did"): the fidelity review's
# leads one at a time against the old defaults, all of them together (the new defaults), KalMamba without the
# regulariser and plain SAC, on clean and noisy cartpole-swingup states at the issue's sizes, one run at a time.
# Also VRKN with its state-task reward weight (1, `vrkn`) and with the image setting's x10 (`vrkn_reward_x10`): what
# the observation-type reward rule did to VRKN. And lead D6 (`mc_features`, `vrkn_mc_features`): SAC's training
# features computed with MC dropout on (`--sac-features mc`, as the authors' CoRAL code does). And the review's
# leads D9 (`no_dropout`: the new defaults without MC dropout, `kalmamba_no_dropout`) and D3 (`vrkn_lr`: the new
# defaults with VRKN's model learning rate 6e-4 and clip 100), and the paper's other two ablations on the new
# defaults: `no_mamba` (`kalmamba_no_mamba`) and `new_no_reg` (`kalmamba_no_reg`); and `features_with_m` (the new
# defaults with SAC on concat(μ⁺_t, m_t): does timely information close the gap? belief-lag diagnosis). Not in the
# default --variants; name them.
# Every variant sets its loss values by flags, so it does not change when a default does.
#
#   bash scripts/kalmamba-leads.sh [--root DIR] [--seeds "0 1 2"] [--obs "state noisy_state"]
#                                  [--variants "old_defaults ... sac"] [--env-steps N] [--dry-run]
#   .venv/bin/python -m analysis.leads results/kalmamba-leads        # the table
#
# Run directories: <root>/<variant>/<obs>/seed<S>/ (default root results/kalmamba-leads). Resumable: rerun the same
# command; a run with DONE is skipped and an interrupted one resumes from its checkpoint (python -m rl.train).
# Run directories written by an older checkout with the same sizes and loss values can be copied in (e.g.
# `new_defaults` written as --model.reg_alpha 0.015625 (summed over D = 64 = averaged) --model.free_nats 1
# --model.reward_loss_scale 1): a run with DONE is never rerun.
# One KalMamba run takes ~8-15 min on one core (1 torch thread; 20-25 min before issue 12's kernels); the default
# grid (7 KalMamba variants x 2 obs + sac x 2 obs, 3 seeds) is 48 runs, ~8-12 hours on one core.
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL=${MUJOCO_GL:-osmesa} PYOPENGL_PLATFORM=${PYOPENGL_PLATFORM:-osmesa}

root=results/kalmamba-leads
seeds="0 1 2"
observations="state noisy_state"
variants="old_defaults reg_mean reg_detach free_nats_1 reward_x1 no_reg new_defaults sac"
env_steps=100000
dry_run=0
while (( $# )); do
  case "$1" in
    --root) root=$2; shift 2 ;;
    --seeds) seeds=$2; shift 2 ;;
    --obs) observations=$2; shift 2 ;;
    --variants) variants=$2; shift 2 ;;
    --env-steps) env_steps=$2; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) sed -n 2,25p "$0"; exit 0 ;;
    *) echo "kalmamba-leads.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

# The issue's sizes (issue 10), shared by every run.
COMMON=(--task cartpole-swingup --context-length 32 --env-steps "$env_steps" --eval-every 10000 --eval-episodes 10
        --checkpoint-every 10000 --batch-size 16 --log-every 5000 --torch-threads 1 --device cpu
        --wall-clock-hours 6 --sac.hidden_dim 256 --sac.n_layers 2)
KALMAMBA=(--model.latent_dim 64 --model.d_model 64 --model.hidden_dim 128)
VRKN=(--model.latent_dim 64 --model.hidden_dim 128)   # the validation study's VRKN sizes
# The old defaults (before issue 10): regulariser summed over D with alpha 1, free nats 3, reward x10.
OLD=(--model.reg_reduction sum --model.reg_alpha 1 --model.reg_detach_belief false --model.free_nats 3
     --model.reward_loss_scale 10)
# The new defaults (issue 10's fix), spelled out so a later default change does not alter the variants built on them;
# NEW_LOSS without alpha, for kalmamba_no_reg (which fixes alpha at 0 and refuses another value).
NEW_LOSS=(--model.reg_reduction mean --model.reg_detach_belief false --model.free_nats 1 --model.reward_loss_scale 1)
NEW=(--model.reg_alpha 1 "${NEW_LOSS[@]}")

variant_args() {  # variant -> the rl.train arguments after COMMON
  case "$1" in
    old_defaults) echo --method kalmamba "${KALMAMBA[@]}" "${OLD[@]}" ;;
    reg_mean)     echo --method kalmamba "${KALMAMBA[@]}" "${OLD[@]}" --model.reg_reduction mean ;;
    reg_detach)   echo --method kalmamba "${KALMAMBA[@]}" "${OLD[@]}" --model.reg_detach_belief true ;;
    free_nats_1)  echo --method kalmamba "${KALMAMBA[@]}" "${OLD[@]}" --model.free_nats 1 ;;
    reward_x1)    echo --method kalmamba "${KALMAMBA[@]}" "${OLD[@]}" --model.reward_loss_scale 1 ;;
    no_reg)       echo --method kalmamba_no_reg "${KALMAMBA[@]}" --model.free_nats 3 --model.reward_loss_scale 10 ;;
    new_defaults) echo --method kalmamba "${KALMAMBA[@]}" "${NEW[@]}" ;;
    sac)          echo --method sac ;;
    vrkn)         echo --method vrkn "${VRKN[@]}" --model.reward_loss_scale 1 ;;   # VRKN's state-task default
    vrkn_reward_x10) echo --method vrkn "${VRKN[@]}" --model.reward_loss_scale 10 ;;  # VRKN's image-setting weight
    # lead D6: SAC trained on one MC-dropout sample of the features (CoRAL's training states), acting at MAP
    mc_features)  echo --method kalmamba "${KALMAMBA[@]}" "${NEW[@]}" --sac-features mc ;;
    vrkn_mc_features) echo --method vrkn "${VRKN[@]}" --model.reward_loss_scale 1 --sac-features mc ;;
    no_dropout)   echo --method kalmamba_no_dropout "${KALMAMBA[@]}" "${NEW[@]}" ;;                 # lead D9
    features_with_m) echo --method kalmamba "${KALMAMBA[@]}" "${NEW[@]}" --model.features_with_m true ;;
    no_mamba)     echo --method kalmamba_no_mamba "${KALMAMBA[@]}" "${NEW[@]}" ;;
    new_no_reg)   echo --method kalmamba_no_reg "${KALMAMBA[@]}" "${NEW_LOSS[@]}" ;;   # alpha 0
    vrkn_lr)      echo --method kalmamba "${KALMAMBA[@]}" "${NEW[@]}" --model.lr 6e-4 --model.grad_clip 100 ;;  # D3
    *) echo "kalmamba-leads.sh: unknown variant '$1'; valid: old_defaults reg_mean reg_detach free_nats_1" \
            "reward_x1 no_reg new_defaults sac vrkn vrkn_reward_x10 mc_features vrkn_mc_features no_dropout vrkn_lr no_mamba new_no_reg features_with_m" >&2; return 2 ;;
  esac
}

for v in $variants; do variant_args "$v" > /dev/null; done   # fail early on a bad variant name
for s in $seeds; do
  for v in $variants; do
    for o in $observations; do
      out=$root/$v/$o/seed$s
      read -ra args <<< "$(variant_args "$v")"
      cmd=(.venv/bin/python -m rl.train --out "$out" --obs "$o" --seed "$s" "${COMMON[@]}" "${args[@]}")
      if (( dry_run )); then echo "${cmd[*]}"; continue; fi
      [[ -f $out/DONE ]] && { echo "$(date +%T) done already: $out"; continue; }
      mkdir -p "$out"
      echo "$(date +%T) start $out"
      "${cmd[@]}" > "$out/train.log" 2>&1 || { echo "$(date +%T) FAILED ($?): $out (see $out/train.log)" >&2; exit 1; }
      echo "$(date +%T) end $out"
    done
  done
done
