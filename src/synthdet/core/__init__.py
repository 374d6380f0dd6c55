"""What every stage runs on: the stage entry point (`cli`), user-fixable errors (`errors`), data
files and atomic writes (`data`), MLflow tracking (`tracking`), and the CPU kernel pins
(`kernels`) and thread count (`threads`) that decide float bits."""
