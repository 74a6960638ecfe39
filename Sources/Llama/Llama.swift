public enum LlamaModule {}
