"""From detector runs to conclusions: mAP and PR (`metrics`), the typed evaluation (`evaluation`),
paired statistics (`stats`), image grids (`plots`) and the one-page report (`report`)."""
