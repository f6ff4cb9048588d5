"""Data readers: RSNA Kaggle layout, CQ500 layout, synthetic head-CT phantoms."""
