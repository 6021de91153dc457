"""The papers' analyses: modality preservation, modality similarity, t-SNE — and their figures."""
