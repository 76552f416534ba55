"""The foundation every layer uses: errors, registries, the path layer, device meshes, exact metric sums."""
