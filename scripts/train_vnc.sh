#!/usr/bin/env bash
# Train mitochondria on the Drosophila VNC crop in ../shared/data, then predict and sweep the
# held-out slices 16-19. Usage: bash scripts/train_vnc.sh [--set key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=../shared/data/drosophila-vnc-stack1/stack1
W=work/vnc
mkdir -p "$W"
[ -d "$W/raw.zarr" ] || emarray ingest "$DATA/raw" "$W/raw.zarr" --voxel-size 50,4.6,4.6 --unit nm -q
[ -d "$W/mito.zarr" ] || { emarray ingest "$DATA/mitochondria" "$W/mito8.zarr" --voxel-size 50,4.6,4.6 --unit nm -q
                           emarray threshold "$W/mito8.zarr" "$W/mito.zarr" -t 127 -q; }
/usr/bin/time -f "train: %e s wall, %M KiB peak RSS" emarray train pipelines/train-mito-vnc.yaml --overwrite "$@"
emarray predict "$W/run/validation/raw.zarr" "$W/run/best.pt" "$W/heldout-prob.zarr" --overwrite -q
emarray sweep "$W/heldout-prob.zarr" "$W/run/validation/truth.zarr" --truth-value 1 --ignore-value 255 \
    --out "$W/heldout-sweep" --overwrite
# the same slices predicted inside the whole stack (raw context from the neighbouring slices,
# which training saw; their labels it did not), scored on slices 16-19 only
[ -d "$W/heldout-mask.zarr" ] || python -c "
import emarray, numpy as np
v = emarray.create_volume('$W/heldout-mask.zarr', (20, 1024, 1024), 'uint8', (20, 256, 256),
                          voxel_size=(50, 4.6, 4.6), unit='nanometer')
m = np.zeros((20, 1024, 1024), np.uint8); m[16:] = 1
v.write((slice(0, 20), slice(0, 1024), slice(0, 1024)), m)"
emarray predict "$W/raw.zarr" "$W/run/best.pt" "$W/stack-prob.zarr" --overwrite -q
emarray sweep "$W/stack-prob.zarr" "$W/mito.zarr" --truth-value 1 --mask "$W/heldout-mask.zarr" \
    --out "$W/stack-sweep" --overwrite
