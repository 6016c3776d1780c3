"""The two CLIP implementations. They mirror each other module by module; import each only when needed."""
