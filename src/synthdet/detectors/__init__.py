"""The YOLO detectors: training and prediction behind an offline interface (`detection`) and what
each detector trains on, its typed variant (`variants`)."""
