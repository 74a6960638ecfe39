public enum BPEModule {}
