from igmu_lightning.errors import run_main
from igmu_lightning.world.export import main

run_main(main)
