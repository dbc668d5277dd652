"""Names and constants shared by the collator, the model and the losses (defined once, here)."""

# Keys of a batch (a dict of tensors).
GENES = "genes"  # (B, L) int64: vocabulary ids, position 0 is <cls>
VALUES = "values"  # (B, L) float32: model input values (bins as floats, or continuous), MASK_VALUE where masked
TARGET_VALUES = "target_values"  # (B, L) float32: the unmasked values (training targets)
PADDING_MASK = "padding_mask"  # (B, L) bool: True = padding
MASK = "mask"  # (B, L) bool: True = value hidden from the model (masked-expression target)
BATCH = "batch"  # (B,) int64: batch / domain index
LABELS = "labels"  # (B,) int64: class index
CELL_INDEX = "cell_index"  # (B,) int64: row of the cell in its AnnData
PERT_FLAGS = "pert_flags"  # (B, L) int64: per-token perturbation flag (0 = not perturbed)
CONDITION = "condition"  # (B,) int64: non-genetic perturbation / condition index (drug, cytokine)
MODALITY = "modality"  # (B, L) int64: modality of each token (0 = RNA)
LIBRARY = "library"  # (B,) float32: the cell's total raw counts (count likelihood of the profile decoder)
PROFILE = "profile"  # (B, P) float32: the cell's standardised panel expression (NaN = not measured)

# Special values in VALUES.
PAD_VALUE = -2.0
MASK_VALUE = -1.0
CLS_VALUE = 0.0

# Special tokens, in vocabulary order (ids 0..3).
PAD_TOKEN = "<pad>"
CLS_TOKEN = "<cls>"
EOC_TOKEN = "<eoc>"
MASK_TOKEN = "<mask>"
SPECIAL_TOKENS = (PAD_TOKEN, CLS_TOKEN, EOC_TOKEN, MASK_TOKEN)
