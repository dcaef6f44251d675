"""The Library screen: the adapter list, its detail pane, the trash and the export dialog."""
