"""Checks of the generated images: FID, KID, CLIP score and nearest neighbours (`metrics`, also
the generate stage's filters), object-level fidelity (`fidelity`) and classifier tests
(`classifiers`)."""
