"""What users and methods declare: delta configs, the selector grammar, the common structure map, ``Method``."""
