"""Extra detector training images: the generated images labelled by the baseline detector
(`annotation`) and copy-paste composites of the handful (`copy_paste`); pseudo-labels are the
pseudo-label stage's own."""
