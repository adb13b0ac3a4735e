"""The names of reasoning-gym's datasets, written down so that registering one task source per
dataset does not import reasoning-gym (which takes 1.5-2 s: it imports sympy, matplotlib and
more, and `loop --help` builds the registry).

Generated from the installed reasoning-gym by `python -m loop_reasoning_gym.names`, which rewrites
this file; tests/test_rg_names.py fails when the list and the installed registry differ.
"""

from __future__ import annotations

GENERATED_FROM = "reasoning-gym 0.1.25"

DATASET_NAMES: tuple[str, ...] = (
    "ab",
    "acre",
    "advanced_geometry",
    "aiw",
    "arc_1d",
    "arc_agi",
    "base_conversion",
    "basic_arithmetic",
    "bf",
    "binary_alternation",
    "binary_matrix",
    "bitwise_arithmetic",
    "boxnet",
    "caesar_cipher",
    "calendar_arithmetic",
    "chain_sum",
    "circuit_logic",
    "codeio",
    "coin_flip",
    "color_cube_rotation",
    "complex_arithmetic",
    "composite",
    "count_bits",
    "count_primes",
    "countdown",
    "course_schedule",
    "cryptarithm",
    "decimal_arithmetic",
    "decimal_chain_sum",
    "dice",
    "emoji_mystery",
    "family_relationships",
    "figlet_font",
    "fraction_simplification",
    "futoshiki",
    "game_of_life",
    "game_of_life_halting",
    "gcd",
    "graph_color",
    "group_anagrams",
    "gsm_symbolic",
    "intermediate_integration",
    "isomorphic_strings",
    "jugs",
    "kakurasu",
    "knight_swap",
    "knights_knaves",
    "largest_island",
    "lcm",
    "leg_counting",
    "letter_counting",
    "letter_jumble",
    "list_functions",
    "mahjong_puzzle",
    "manipulate_matrix",
    "maze",
    "mini_sudoku",
    "modulo_grid",
    "n_queens",
    "needle_haystack",
    "number_filtering",
    "number_format",
    "number_sequence",
    "number_sorting",
    "palindrome_generation",
    "palindrome_partitioning",
    "path_star",
    "polynomial_equations",
    "polynomial_multiplication",
    "pool_matrix",
    "power_function",
    "prime_factorization",
    "products",
    "propositional_logic",
    "puzzle24",
    "quantum_lock",
    "ransom_note",
    "rearc",
    "rectangle_count",
    "rotate_matrix",
    "rotten_oranges",
    "rubiks_cube",
    "rush_hour",
    "self_reference",
    "sentence_reordering",
    "shortest_path",
    "simple_equations",
    "simple_geometry",
    "simple_integration",
    "sokoban",
    "spell_backward",
    "spiral_matrix",
    "string_insertion",
    "string_manipulation",
    "string_splitting",
    "string_synthesis",
    "sudoku",
    "survo",
    "syllogism",
    "time_intervals",
    "tower_of_hanoi",
    "tsumego",
    "word_ladder",
    "word_sequence_reversal",
    "word_sorting",
    "zebra_puzzles",
)


def live_names() -> list[str]:
    """The dataset names of the installed reasoning-gym (imports it)."""
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


def render(names: list[str], version: str) -> str:
    """This module's source with `names` and `version` filled in."""
    from pathlib import Path

    source = Path(__file__).read_text(encoding="utf-8")
    head, _, rest = source.partition('GENERATED_FROM = "')
    _, _, rest = rest.partition('"\n')
    _, _, tail = rest.partition("\n)\n")
    body = "".join(f'    "{name}",\n' for name in names)
    return (f'{head}GENERATED_FROM = "reasoning-gym {version}"\n\n'
            f"DATASET_NAMES: tuple[str, ...] = (\n{body}){chr(10)}{tail}")


if __name__ == "__main__":
    import importlib.metadata
    from pathlib import Path

    text = render(live_names(), importlib.metadata.version("reasoning-gym"))
    Path(__file__).write_text(text, encoding="utf-8")
    print(f"wrote {len(live_names())} names to {__file__}")
