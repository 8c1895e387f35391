"""Training: data loading, augmentation, losses and category sampling for ZegCLIP on MagicSeg datasets."""
