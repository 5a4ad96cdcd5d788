from irscreen.cli import main

main()
