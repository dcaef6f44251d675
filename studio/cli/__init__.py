"""`lora-studio VERB ...`: the studio's verbs, headless, one module per verb group."""
