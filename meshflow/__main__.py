from meshflow.cli import main

main()
