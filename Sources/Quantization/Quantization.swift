public enum QuantizationModule {}
