"""Speaker groups ("cụm loa": the speakers of one thôn/ấp) and the resolution of group targets."""
