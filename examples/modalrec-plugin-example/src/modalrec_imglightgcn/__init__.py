"""A modalrec plugin: ImgLightGCN, found by ``modalrec models`` through the ``modalrec.models`` entry point."""
