"""Write a randomly initialised model.bin (the original's command): python create_model.py --help"""
from tinystories.cli import create_main, run

if __name__ == "__main__":
    run(create_main)
