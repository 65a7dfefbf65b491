"""The 14 CheXpert observations, in the order CheXpert and the R2Gen-family `compute_ce` use.

Label values everywhere in r2g: 1 positive, 0 negative, -1 uncertain, None blank (not mentioned).
"""

CHEXPERT_LABELS: tuple[str, ...] = (
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
    "No Finding",
)

# The 5-label subset reported by CheXpert-style benchmarks (LLaVA-Rad, CheXagent).
CHEXPERT_5: tuple[str, ...] = ("Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Pleural Effusion")

POSITIVE, NEGATIVE, UNCERTAIN, BLANK = 1, 0, -1, None
