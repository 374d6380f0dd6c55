"""Extra training images beside the generated ones' pixels: labels for the generated images from
the baseline detector (`annotation`) and copy-paste composites of the handful (`copy_paste`)."""
